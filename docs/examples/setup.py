"""Build of acme_nfs against an installed onvm-cluster: its nflib/*.pxd,
dpdk/*.pxd and dpdk/shim.h ship with it (setup.cfg package_data)."""
import os
import shlex
import subprocess

import dpdk
from Cython.Build import cythonize
from setuptools import Extension, setup


def pkg_config(flag):
    return shlex.split(subprocess.check_output(["pkg-config", flag, "libdpdk"], text=True))


root = os.path.dirname(os.path.dirname(dpdk.__file__))   # holds nflib/ and dpdk/
ext = Extension("acme_nfs.port_block", ["acme_nfs/port_block.pyx"],
                include_dirs=[os.path.dirname(dpdk.__file__)],   # shim.h
                extra_compile_args=pkg_config("--cflags"),
                extra_link_args=pkg_config("--libs"))
setup(name="acme-nfs", version="0.1", packages=["acme_nfs"],
      entry_points={"onvm.nfs": ["dns-block = acme_nfs.dns_block:DnsBlock",
                                 "port-block = acme_nfs.port_block:PortBlock"]},
      ext_modules=cythonize([ext], include_path=[root], language_level=3))
