"""ctspine_builder: rebuild, verify and publish the CTSpine1K spine CT dataset."""

__version__ = "0.1.0"

# The name written into NIfTI descrip fields, sidecars and dataset cards.
TOOL_NAME = "ctspine_builder"
