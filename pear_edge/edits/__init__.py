"""The weight edits: the Coefficients type, head and channel scaling, and the fold."""
