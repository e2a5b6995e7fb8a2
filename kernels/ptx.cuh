// Inline-PTX helpers (GPU branch + SIMT-shim branch). Filled in with the shim.
#pragma once
