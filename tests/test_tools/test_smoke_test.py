# Copyright (c) mmvheat contributors. All rights reserved.
"""``tools/smoke_test.py``'s bad inputs: one line and the exit status (its
run itself builds a Mask R-CNN, which the train/test tests cover)."""
import pytest

TOOL = 'tools/smoke_test.py'


@pytest.mark.parametrize('argv, status, message', [
    (['--config', 'nope.py'], 1, 'error: nope.py: no such config file\n'),
    (['--size', '8', '64'], 2,
     'error: --size 8 64: the synthetic scene needs sides of at least 32 '
     'pixels\n'),
])
def test_bad_inputs(tool_main, capsys, argv, status, message):
    assert tool_main(TOOL, argv, capsys) == (status, message)


def test_bad_size_is_a_usage_error(tool_main, capsys):
    status, err = tool_main(TOOL, ['--size', '0', '64'], capsys)
    assert status == 2
    assert 'argument --size: must be at least 1, got 0' in err
