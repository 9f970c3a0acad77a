"""Names shared by the modules of the transformers integration."""

ATTN_IMPLEMENTATION = "swa_cuda"
TESTED_TRANSFORMERS = "5.17 and 5.23"
