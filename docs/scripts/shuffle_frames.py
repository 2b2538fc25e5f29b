"""Write every video of SRC to DST as npz with its frames in a seeded random order
(the time-shuffled control of docs/RESULTS.md).

    python docs/scripts/shuffle_frames.py SRC DST
"""

import os
import sys

import numpy as np

from lddm_fast.data.video_io import read_video, write_video


def main(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in sorted(os.listdir(src)):
        frames = read_video(os.path.join(src, name)).frames
        write_video(os.path.join(dst, name + ".npz"), frames[rng.permutation(len(frames))])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
