"""llmtune: fine-tune and evaluate Hugging Face models from a YAML recipe."""

__version__ = "0.1.0"
