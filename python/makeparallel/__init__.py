"""Lower-case alias of ``makeParallel``, for code written for the earlier package.

``import makeparallel`` gives the very same module object as
``import makeParallel``, so every class and function is shared.
"""

import sys

import makeParallel

sys.modules[__name__] = makeParallel
