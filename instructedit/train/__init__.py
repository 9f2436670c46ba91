"""Meta-training of the MEND editor (with or without instructions)."""
