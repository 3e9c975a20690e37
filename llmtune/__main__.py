"""`python -m llmtune ...` and `accelerate launch -m llmtune ...`."""

from llmtune.cli import run

if __name__ == "__main__":
    run()
