"""The module must load and run its portable kernels on a CPU without AVX2 or AVX-512. The
AVX2 and AVX-512 builds of the kernels are compiled with those instruction sets into one
module, so a function they share with the rest of it (an inline helper, a std:: template)
could be linked from an AVX-512 object and crash an older CPU before the ISA choice
matters. Disassembled, no function outside the avx2/avx512 namespaces may hold a VEX or
EVEX instruction."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fastconv

objdump = shutil.which("objdump")
pytestmark = pytest.mark.skipif(objdump is None, reason="objdump (binutils) is not installed")


def _functions_with_vector_instructions(library):
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout
    found, function = {}, None
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        if function and len(fields) > 1 and fields[1].strip().startswith("v"):
            found.setdefault(function, fields[1].split()[0])
    return found


def test_no_vector_instructions_outside_the_isa_builds():
    library = Path(fastconv._cpu.__file__)
    stray = {f: i for f, i in _functions_with_vector_instructions(library).items()
             if "avx2" not in f and "avx512" not in f}
    assert not stray, list(stray.items())[:10]
