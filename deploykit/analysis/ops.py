"""The op types the accounting and the geometry lint treat alike."""

VIEW_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
INPLACE_OPS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
               "Selu", "Softplus", "PRelu", "Neg", "Abs"}
CONV_OPS = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "NhwcConv"}
MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
AXIS_NAMES = {1: ["length"], 2: ["height", "width"], 3: ["depth", "height", "width"]}
