/* THE table of activations: the only place their names and kernel codes are written.
 *
 *   CYF_ACTIVATION(ENUM, name, code)  a kernel: the enum constant CYF_<ENUM> = code, the name
 *                                     accepted everywhere, and the two per-element functions
 *                                     cyf_<name>_forward(z) and cyf_<name>_backward(z, dh) that
 *                                     activation.h must define
 *   CYF_ACTIVATION_ALIAS(alias, ENUM) another accepted name of the same kernel
 *
 * An X-macro list (no include guard: it is included once per expansion). activation.h
 * expands it into the C enum, the name table and both switch statements (forward and
 * backward); ffn.pyx reads the name table from C, and config.py's ACTIVATIONS is ffn's
 * tuple of names, so the Python side accepts exactly the names listed here. Codes must be
 * distinct (a duplicate fails to compile: two equal case labels) and stay stable (tests and
 * saved models' configs use names, but kernel tests pass codes). Adding an activation: one
 * line here, its two functions in activation.h.
 *
 * Names: PyTorch's (relu, gelu, silu), Hugging Face's (swish, gelu_new, gelu_pytorch_tanh),
 * and identity (a linear feed-forward, and the bias-only pass of ffn.bias_act_forward).
 */
CYF_ACTIVATION(IDENTITY, identity, 0)
CYF_ACTIVATION(RELU, relu, 1)
CYF_ACTIVATION(GELU, gelu, 2)
CYF_ACTIVATION(SILU, silu, 3)
CYF_ACTIVATION(GELU_TANH, gelu_tanh, 4)
CYF_ACTIVATION_ALIAS(swish, SILU)
CYF_ACTIVATION_ALIAS(gelu_new, GELU_TANH)
CYF_ACTIVATION_ALIAS(gelu_pytorch_tanh, GELU_TANH)
