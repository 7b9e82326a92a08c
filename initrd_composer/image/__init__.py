"""The image writer and reader: entries, reproducible cpio, compression, reading initrds back."""
