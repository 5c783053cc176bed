"""Prompts and the data the proxies and the harness read: real-text QA, corpora, MDQA, counterfactual and key-value sets."""
