"""Integer codes the kernels take for activations, losses and optimizers, and the columns of
the layout table. Plain Python: the API layer reads them without importing numba."""

# Activation codes.
IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, EXP = 0, 1, 2, 3, 4, 5, 6
LEAKY_SLOPE = 0.01

# Loss codes. The per-sample loss is ``loss_scale * sum over outputs`` of the element loss.
SQUARED, BINARY_CROSS_ENTROPY, CATEGORICAL_CROSS_ENTROPY, POISSON = 0, 1, 2, 3

# Optimizer codes.
SGD, MOMENTUM, NESTEROV, ADAM = 0, 1, 2, 3

# Indices into the ``hyper`` array of optimizer settings.
H_LR, H_MOMENTUM, H_BETA1, H_BETA2, H_EPSILON, H_L2 = 0, 1, 2, 3, 4, 5

# Columns of the ``layout`` table.
L_FAN_IN, L_FAN_OUT, L_WEIGHT, L_BIAS, L_ACTIVATION = 0, 1, 2, 3, 4
