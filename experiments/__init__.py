"""Small-scale reproductions of classic hypernetwork results. Run as `python -m experiments.<name>`."""
