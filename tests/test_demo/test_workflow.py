# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's plan: its commands, its config overrides, its schedule."""
import os.path as osp
import sys
import threading

import pytest
import torch
from mmengine.config import Config

from demo.workflow import (DEMO_TASKS, PHASE_NEEDS, PROJECT_ROOT, PhaseQueue,
                           TaskPlan, child_env, schedule_options,
                           task_cfg_options, trained_checkpoint)


def _merged(config, options):
    """``config`` with ``--cfg-options`` merged, as tools/train.py does."""
    from mmvheat.apis import load_config, train_parser
    argv = [osp.join(PROJECT_ROOT, config)]
    if options:
        argv += ['--cfg-options', *options]
    return load_config(train_parser().parse_args(argv))


def _learning_rates(cfg, iters):
    """The learning rate of each iteration, from the config's schedulers
    built by mmengine on a one-parameter optimizer."""
    from mmengine.registry import PARAM_SCHEDULERS
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = []
    for scheduler in cfg.param_scheduler:
        scheduler = dict(scheduler)
        scheduler.pop('_scope_', None)
        schedulers.append(
            PARAM_SCHEDULERS.build(dict(scheduler, optimizer=optimizer)))
    rates = []
    for _ in range(iters):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return rates


@pytest.mark.parametrize('task', ['det', 'seg'])
@pytest.mark.parametrize('factor', [0.5, 2])
def test_schedule_scales_with_max_iters(task, factor):
    config = DEMO_TASKS[task].config
    original = _merged(config, [])
    iters = int(original.train_cfg.max_iters * factor)
    cfg = _merged(config,
                  schedule_options(osp.join(PROJECT_ROOT, config), iters))
    assert cfg.train_cfg.max_iters == iters == cfg.train_cfg.val_interval
    assert cfg.default_hooks.checkpoint.interval == iters
    before = _learning_rates(original, original.train_cfg.max_iters)
    after = _learning_rates(cfg, iters)
    # the same curve, stretched: the peak where the warm-up ends (to the
    # iteration: begin/end are rounded), halfway down at half of training
    # (within 5%: the rounding, again), and the decay (cosine to eta_min,
    # poly to 0) done when training ends
    peak = max(range(len(before)), key=before.__getitem__)
    assert max(
        range(iters), key=after.__getitem__) == pytest.approx(
            peak * factor, abs=1)
    assert after[iters // 2] == pytest.approx(
        before[len(before) // 2], rel=0.05)
    for rates in (before, after):
        assert rates[-1] < 0.02 * max(rates)


def test_schedule_of_a_few_iterations_stays_valid():
    for task in DEMO_TASKS.values():
        config = osp.join(PROJECT_ROOT, task.config)
        for iters in (1, 2, 3):
            cfg = _merged(task.config, schedule_options(config, iters))
            for scheduler in cfg.param_scheduler:
                assert 0 <= scheduler.begin < scheduler.end <= iters
            assert len(_learning_rates(cfg, iters)) == iters


def test_cfg_options_point_at_the_demo_data(tmp_path):
    root = str(tmp_path / 'data')
    det = _merged(DEMO_TASKS['det'].config,
                  task_cfg_options(DEMO_TASKS['det'], root, None, ['a=1']))
    for split in ('train', 'val', 'test'):
        assert det[f'{split}_dataloader'].dataset.data_root == \
            osp.join(root, 'coco') + '/'
    ann = osp.join(root, 'coco', 'annotations', 'instances_val2017.json')
    assert det.val_evaluator.ann_file == det.test_evaluator.ann_file == ann
    assert det.val_evaluator.classwise  # the per-class tables of the log
    assert det.a == 1
    seg = _merged(DEMO_TASKS['seg'].config,
                  task_cfg_options(DEMO_TASKS['seg'], root))
    assert seg.test_dataloader.dataset.data_root == osp.join(root, 'ade') + '/'
    assert seg.train_cfg.max_iters == Config.fromfile(
        osp.join(PROJECT_ROOT, DEMO_TASKS['seg'].config)).train_cfg.max_iters


def test_plan_commands(tmp_path):
    work = str(tmp_path / 'work')
    plan = TaskPlan(
        DEMO_TASKS['det'],
        'data',
        work,
        max_iters=4,
        cfg_options=['x=1'],
        num_train=5,
        num_val=2)
    generate = plan.generate()
    assert generate.commands == [[
        sys.executable,
        osp.join(PROJECT_ROOT, 'tools', 'dataset_converters',
                 'make_demo_data.py'), '--out', 'data', '--tasks', 'det',
        '--num-train', '5', '--num-val', '2'
    ]]
    assert generate.log_path == osp.join(work, 'det', 'generate.log')
    untrained = plan.untrained()
    weights = osp.join(work, 'det', 'untrained', 'initial_weights.pth')
    make, test = untrained.commands
    assert make[1:4] == ['-m', 'demo.initial_weights', plan.config]
    assert make[4] == weights and test[2:4] == [plan.config, weights]
    assert untrained.outputs == dict(
        work_dir=osp.join(work, 'det', 'untrained'),
        predictions=osp.join(work, 'det', 'untrained', 'predictions.pkl'))
    for command in untrained.commands:
        options = command[command.index('--cfg-options') + 1:]
        assert 'train_cfg.max_iters=4' in options and options[-1] == 'x=1'
    train = plan.train().commands[0]
    assert train[1].endswith(osp.join('tools', 'train.py'))
    assert '--no-validate' in train
    test = plan.test('ckpt.pth')
    assert test.commands[0][2:4] == [plan.config, 'ckpt.pth']
    assert '--tta' not in test.commands[0]
    tta = plan.test('ckpt.pth', tta=True)
    assert '--tta' in tta.commands[0]
    assert tta.log_path == osp.join(work, 'det', 'test_tta.log')
    seg = TaskPlan(DEMO_TASKS['seg'], 'data', work)
    # every test keeps its predictions and its metrics, which the demo
    # reads: mmdet's pickle, mmseg's folder of label maps
    for phase, task, name, out in [
        (untrained, 'det', 'untrained', 'predictions.pkl'),
        (test, 'det', 'test', 'predictions.pkl'),
        (tta, 'det', 'test_tta', 'predictions.pkl'),
        (seg.untrained(), 'seg', 'untrained', 'predictions'),
        (seg.test('ckpt.pth'), 'seg', 'test', 'predictions'),
        (seg.test('ckpt.pth', tta=True), 'seg', 'test_tta', 'predictions'),
    ]:
        command = phase.commands[-1]
        work_dir = osp.join(work, task, name)
        assert phase.outputs == dict(
            work_dir=work_dir, predictions=osp.join(work_dir, out))
        assert command[command.index('--work-dir') + 1] == work_dir
        assert command[command.index('--out') + 1] == osp.join(work_dir, out)
        assert phase.library == DEMO_TASKS[task].library


def test_trained_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='last_checkpoint'):
        trained_checkpoint(str(tmp_path))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_3.pth'))
    with pytest.raises(FileNotFoundError, match='missing'):
        trained_checkpoint(str(tmp_path))
    (tmp_path / 'iter_3.pth').write_bytes(b'')
    assert trained_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_3.pth')


def test_child_env(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', '/elsewhere')
    env = child_env(threads=1)
    assert env['PYTHONPATH'].split(':') == [PROJECT_ROOT, '/elsewhere']
    assert env['OMP_NUM_THREADS'] == env['MKL_NUM_THREADS'] == '1'
    assert env['PYTHONUNBUFFERED'] == '1'


def _queue(tmp_path, tasks=('det', 'seg')):
    return PhaseQueue(
        [TaskPlan(DEMO_TASKS[task], 'data', str(tmp_path)) for task in tasks])


def _finish(queue, phase):
    if phase.name == 'train':
        phase.outputs['checkpoint'] = f'{phase.task}.pth'
    queue.finish(phase)


class _Taker(threading.Thread):
    """A lane asking the queue for its next phase."""

    def __init__(self, queue):
        super().__init__(daemon=True)
        self.queue = queue
        self.phase = 'nothing yet'
        self.start()

    def run(self):
        self.phase = self.queue.take()

    def waits(self) -> bool:
        """Whether it is still waiting a moment later."""
        self.join(0.2)
        return self.is_alive()

    def got(self):
        self.join(5)
        assert not self.is_alive(), 'take() did not return'
        return self.phase


def _name(phase):
    return phase.task, phase.name


def test_queue_gives_the_first_task_each_phase_as_soon_as_it_can(tmp_path):
    """Two lanes: one trains Mask R-CNN from the start while the other
    evaluates it untrained and does all of UperNet; after training, the two
    tests run side by side."""
    queue = _queue(tmp_path)
    det_generate = queue.take()
    assert _name(det_generate) == ('det', 'generate')
    seg_generate = queue.take()  # det's next phases need its data
    assert _name(seg_generate) == ('seg', 'generate')
    _finish(queue, det_generate)
    det_train, det_untrained = queue.take(), queue.take()
    assert _name(det_train) == ('det', 'train')  # training first
    assert _name(det_untrained) == ('det', 'untrained')
    _finish(queue, det_untrained)
    lane = _Taker(queue)
    assert lane.waits()  # nothing can start: seg's data is not there yet
    _finish(queue, seg_generate)
    seg_train = lane.got()
    assert _name(seg_train) == ('seg', 'train')
    seg_untrained = queue.take()
    assert _name(seg_untrained) == ('seg', 'untrained')
    _finish(queue, seg_untrained)
    _finish(queue, seg_train)
    seg_tests = [queue.take(), queue.take()]
    assert [_name(p) for p in seg_tests] == [('seg', 'test_tta'),
                                             ('seg', 'test')]
    assert seg_tests[1].commands[0][3] == 'seg.pth'
    lanes = [_Taker(queue), _Taker(queue)]
    assert lanes[0].waits() and lanes[1].waits()  # det's tests need training
    _finish(queue, det_train)
    assert sorted(_name(lane.got()) for lane in lanes) == [('det', 'test'),
                                                           ('det', 'test_tta')]
    assert queue.take() is None  # every phase taken


def test_queue_order_and_needs(tmp_path):
    """Played through with lanes that finish at once: every phase once,
    the first task's first, each after the phases it needs; then None."""
    queue = _queue(tmp_path)
    taken = []
    while True:
        phase = queue.take()
        if phase is None:
            break
        for need in PHASE_NEEDS[phase.name]:
            assert need in queue.done[phase.task]
        taken.append((phase.task, phase.name))
        _finish(queue, phase)
    assert taken == [(task, name) for task in ('det', 'seg')
                     for name in PHASE_NEEDS]
    test = queue.done['det']['test']
    assert test.commands[0][3] == 'det.pth'  # the trained checkpoint
    assert '--tta' in queue.done['seg']['test_tta'].commands[0]


def test_queue_waits_for_needs_and_close_releases(tmp_path):
    queue = _queue(tmp_path, tasks=('seg', ))
    generate = queue.take()
    lane = _Taker(queue)
    assert lane.waits()  # train and untrained need the data
    _finish(queue, generate)
    assert _name(lane.got()) == ('seg', 'train')
    assert _name(queue.take()) == ('seg', 'untrained')
    lane = _Taker(queue)
    assert lane.waits()  # the tests need the checkpoint
    queue.close()  # a phase failed: nothing more for anyone
    assert lane.got() is None
    assert queue.take() is None
