"""The media builders: ISO, OBDR tape, PXE tree, boot menus, the loaders they carry."""
