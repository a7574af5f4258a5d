"""Manifests shipped with ctspine_builder, importable as package data."""
