"""Build of onvm-cluster: the Python packages and the Cython fast path,
compiled against DPDK found through `pkg-config libdpdk`."""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "libdpdk"], check=True,
                             capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit("onvm-cluster: pkg-config is missing; install it with "
                 "`apt-get install pkg-config libdpdk-dev` (or run `make deps`).")
    except subprocess.CalledProcessError:
        sys.exit("onvm-cluster: DPDK was not found by `pkg-config libdpdk`; "
                 "install it with `apt-get install libdpdk-dev` "
                 "(or run `make deps`, which does it as root).")
    return shlex.split(out)


def dpdk_extension(name, sources):
    cflags = pkg_config("--cflags")
    libs = pkg_config("--libs")
    return Extension(
        name, sources,
        include_dirs=["dpdk"],
        extra_compile_args=cflags + ["-O3", "-Wno-deprecated-declarations",
                                     "-Wno-unused-function"],
        extra_link_args=libs + ["-lrte_net_ring"],
    )


def remove_stale_builds(package):
    """An in-place build of a module whose .pyx is gone (host_agent/fastpath
    became fastpath.py) would shadow its replacement: remove it."""
    for name in os.listdir(package):
        module, dot, rest = name.partition(".")
        if dot and (rest.endswith(".so") or rest == "c") and \
                not os.path.exists(os.path.join(package, module + ".pyx")):
            print(f"onvm-cluster: removing {package}/{name}, left from a module "
                  "that is no longer Cython")
            os.unlink(os.path.join(package, name))


def extensions():
    from Cython.Build import cythonize
    exts = []
    # Every .pyx of these packages is one extension module (nflib first:
    # the others cimport it).
    for package in ("nflib", "host_agent", "nfs"):
        remove_stale_builds(package)
        for pyx in sorted(os.listdir(package)):
            if pyx.endswith(".pyx"):
                exts.append(dpdk_extension(f"{package}.{pyx[:-4]}",
                                           [f"{package}/{pyx}"]))
    return cythonize(exts, language_level=3, include_path=["."],
                     compiler_directives={"boundscheck": False,
                                          "wraparound": False,
                                          "cdivision": True})


setup(ext_modules=extensions())
