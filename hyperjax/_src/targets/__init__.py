"""Adapters from network frameworks to `TargetSpec`. Each imports its framework lazily."""
