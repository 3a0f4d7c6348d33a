# Copyright (c) mmvheat contributors. All rights reserved.
from typing import Sequence, Tuple, Union

__all__ = ['parse_out_indices']


def parse_out_indices(out_indices: Union[int, Sequence[int]],
                      num_stages: int) -> Tuple[int, ...]:
    """Normalise ``out_indices`` (an int or ints, negatives allowed)."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    parsed = []
    for index in out_indices:
        if not -num_stages <= index < num_stages:
            raise ValueError(f'out_indices must be in [-{num_stages}, '
                             f'{num_stages}), got {index}')
        parsed.append(index % num_stages)
    return tuple(parsed)
