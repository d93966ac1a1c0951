"""Building the graphs: the VGG19 layer table and weights, the forward ops with their
gradient kernels, the loss terms, the two networks (features; loss and gradient), their
declared interfaces, and export to ONNX files with a manifest. Pure functions, no sessions."""
