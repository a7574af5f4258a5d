"""fetch stage of the ctspine_builder pipeline."""
