"""Examples of what users bring to squeeze: their own networks (user_models), and their data as an
ImageFolder (fmnist_imagefolder writes Fashion-MNIST as one)."""
