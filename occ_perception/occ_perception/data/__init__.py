"""Datasets: the synthetic driving world (and, later, nuScenes/Occ3D reading and rosbag2 tools).

- :mod:`.synth_world`: a seeded procedural driving scene and its state at any time.
- :mod:`.synth_render`: ray casting of cameras and lidar, Occ3D ground truth and masks.
- :mod:`.synth_nuscenes`: writes a nuScenes-schema dataset with Occ3D labels and flow.
"""
