"""The NF API as the built-in NFs and older third-party NFs import it
(`from nfs.api import PythonNF`): the same objects as nflib.api, where they
are defined.  Not here: anything of its own."""
from nflib.api import (GROUP, NFConfigError, PythonNF, cli_list, make_nf,  # noqa: F401
                       nf_class, nf_types, rule_text)
