"""Generator factories: each returns a `HyperNetwork(init, apply)` for a `TargetSpec`."""
