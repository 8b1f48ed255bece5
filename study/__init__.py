"""Study layer: search spaces, study specs, the Ray Tune runner and the `patchtune` command."""
