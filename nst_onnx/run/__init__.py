"""Running the graphs and optimising: onnxruntime sessions and devices, the evaluator that
binds a problem's fixed inputs, the optimisers, and the memory estimate."""
