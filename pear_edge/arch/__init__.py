"""Architecture facts: the registry of supported model types and the head layout of o_proj."""
