"""The compose-initrd command line: argument parsing and the verbs."""
