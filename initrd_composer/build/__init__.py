"""The build pipeline: module plan, firmware, Python runtime, tools, ELF closure, ld.so cache."""
