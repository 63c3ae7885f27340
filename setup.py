"""ament_python package setup for cosme_ros.

Dependencies are declared in package.xml (rosdep, colcon builds) and pinned in requirements/
(pip into .venv via scripts/setup_env.sh). install_requires stays empty on purpose: on a ROS
machine numpy/OpenCV/torch come from the distro or the system, and a pip name such as
``opencv-python-headless`` listed here makes setuptools' generated console scripts refuse to start
when that exact distribution is absent.
"""

from glob import glob

from setuptools import find_packages, setup

package_name = "cosme_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*")),
        *[
            ("share/" + package_name + "/" + d, glob(d + "/*.*"))
            for d in sorted({p.rsplit("/", 1)[0] for p in glob("models/**/*.*", recursive=True)})
        ],
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="cosme_ros developers",
    maintainer_email="cosme-ros@example.org",
    description="CosMe anomaly segmentation for urban camera images as a ROS 2 node",
    license="Apache-2.0",
    # as `ros2 pkg create` does: colcon runs pytest when the "test" extra names it (setuptools
    # >= 79 dropped tests_require, and colcon then ran 0 tests through unittest)
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "cosme = cosme_ros.cli.main:main",
            "cosme_node = cosme_ros.ros.node:main",
        ],
    },
)
