"""fastconv's ops inside PyTorch (importing this imports torch; `import fastconv` does not).

- `torch.ops.fastconv.<op>` and `torch.ops.fastconv.<op>_backward`: every op of the op table
  (`fastconv.ops.OPS`) as a PyTorch operator on CPU and CUDA tensors, with fake kernels for
  torch.compile and autograd through fastconv's backward ops (`fastconv.torch.library`).
- `fastconv.torch.conv2d(x, w, ...)` and the other functions of `fastconv.functional`, with
  the same names and arguments but on tensors; the layout is the memory format of x
  (contiguous: NCHW, channels_last: NHWC), never copied.
- `fastconv.torch.nn`: Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (output size 1) and
  BatchNorm2d, drop-in for torch.nn's; `swap_modules(model)` switches a model to them.
"""

from . import nn
from .library import FUNCTIONS
from .nn import swap_modules

globals().update(FUNCTIONS)
__all__ = [*sorted(FUNCTIONS), "nn", "swap_modules"]
