import sys

# Hosts built in tests never scan entry points unless a test asks (llm's convention).
sys._called_from_test = True  # type: ignore[attr-defined]
