"""Networks: the classifier wrapper and built-in convnet, a user's network by class_path, and
the shapes of a pruned one."""
