"""The data: IDX files and ImageFolders read strictly, split, described (DataSpec) and checked."""
