# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's plan: which commands each phase runs, and what it reads back.

For each task (``det``: vHeat-T Mask R-CNN, ``seg``: vHeat-T UperNet),
``tools/demo.py`` generates the data, evaluates the untrained model,
trains it from scratch, tests it, and tests it with ``--tta``. Every phase is a
list of command lines of the project's tools (:class:`Phase`), run with
:func:`demo.phases.run_logged`; the data and the configs are the
ones a person would use, pointed at the demo's data root with
``--cfg-options`` only. A test phase's metrics are read from the files the
test wrote (:func:`demo.results.read_test_results`). Layout of the work
directory::

    <work_dir>/<task>/<phase>.log        the phase's whole output
    <work_dir>/<task>/untrained/         initial_weights.pth, test run
    <work_dir>/<task>/train/             checkpoints, mmengine's logs
    <work_dir>/<task>/test/              test run (the picture's predictions)
    <work_dir>/<task>/test_tta/          test run with --tta
    <work_dir>/summary.json, summary.md, summary.png

where a test run is mmengine's ``<timestamp>/`` (the metrics in
``<timestamp>.json``) and the predictions of ``--out``
(``predictions.pkl`` for mmdet, ``predictions/`` for mmseg).
"""
import json
import os
import os.path as osp
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .data import MARKER_NAME, TASK_DIRS
from .phases import IterProgress, python_command, run_logged
from .results import read_test_results

__all__ = [
    'DemoTask', 'Phase', 'TaskPlan', 'DEMO_TASKS', 'PHASE_NAMES', 'RUN_PHASES',
    'task_cfg_options', 'schedule_options', 'trained_checkpoint', 'child_env',
    'PHASE_NEEDS', 'plan_phase', 'run_phase', 'PhaseQueue'
]

PROJECT_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN_TOOL = osp.join(PROJECT_ROOT, 'tools', 'train.py')
TEST_TOOL = osp.join(PROJECT_ROOT, 'tools', 'test.py')
MAKE_DATA_TOOL = osp.join(PROJECT_ROOT, 'tools', 'dataset_converters',
                          'make_demo_data.py')


@dataclass
class DemoTask:
    """One model of the demo.

    Args:
        name (str): ``'det'`` or ``'seg'`` (also the data's task).
        title (str): The model, for people.
        library (str): ``'mmdet'`` or ``'mmseg'``.
        config (str): The config, relative to the project root.
    """
    name: str
    title: str
    library: str
    config: str


DEMO_TASKS = dict(
    det=DemoTask(
        'det', 'vHeat-T Mask R-CNN', 'mmdet',
        'configs/vheat/demo/mask-rcnn_vheat-t_fpn_demo-shapes-128.py'),
    seg=DemoTask('seg', 'vHeat-T UperNet', 'mmseg',
                 'configs/vheat/demo/vheat-tiny_upernet_demo-shapes-128.py'))

#: The phases of a task, in order, with the names people see.
PHASE_NAMES = {
    'generate': 'generate data',
    'untrained': 'evaluate untrained',
    'train': 'train',
    'test': 'test',
    'test_tta': 'test --tta',
}


@dataclass
class Phase:
    """Command lines whose output goes to one log.

    Args:
        task (str): ``'det'`` or ``'seg'``.
        name (str): A key of :data:`PHASE_NAMES`.
        commands (list[list[str]]): The command lines.
        log_path (str): Where their output goes.
        library (str, optional): The library of a test phase. Defaults to
            None.
        outputs (dict): What the phase made that later steps read (files,
            the dataset's size; a test phase's ``work_dir`` and
            ``predictions``).
        results (dict, optional): A test phase's metric rows, once read.
    """
    task: str
    name: str
    commands: List[List[str]]
    log_path: str
    library: Optional[str] = None
    outputs: Dict[str, object] = field(default_factory=dict)
    results: Optional[Dict[str, float]] = None

    @property
    def label(self) -> str:
        return PHASE_NAMES.get(self.name, self.name)


def child_env(threads: Optional[int] = None) -> dict:
    """The environment of the phases' commands: this process's, with this
    checkout first on ``PYTHONPATH`` (the tools import the same
    ``mmvheat``) and unbuffered output (the progress comes as it
    happens)."""
    env = dict(os.environ)
    paths = [PROJECT_ROOT] + [p for p in [env.get('PYTHONPATH')] if p]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env['PYTHONUNBUFFERED'] = '1'
    if threads is not None:
        env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(threads)
    return env


def schedule_options(config: str, max_iters: int) -> List[str]:
    """``--cfg-options`` that train ``config`` for ``max_iters`` iterations,
    with its learning-rate schedule (warm-up, decay) stretched or shrunk to
    match (``begin``/``end`` scaled, each scheduler at least one
    iteration long)."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    old_iters = cfg.train_cfg.get('max_iters', None)
    if old_iters is None:
        raise ValueError(f'{config} does not train by iterations '
                         '(train_cfg.max_iters); cannot override them')
    options = [
        f'train_cfg.max_iters={max_iters}',
        f'train_cfg.val_interval={max_iters}',
        f'default_hooks.checkpoint.interval={max_iters}'
    ]
    schedulers = cfg.get('param_scheduler', None) or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    for i, scheduler in enumerate(schedulers):
        if scheduler.get('by_epoch', True):
            continue
        begin = min(
            round(scheduler.get('begin', 0) * max_iters / old_iters),
            max_iters - 1)
        end = min(
            max(
                round(scheduler.get('end', old_iters) * max_iters / old_iters),
                begin + 1), max_iters)
        options += [
            f'param_scheduler.{i}.begin={begin}',
            f'param_scheduler.{i}.end={end}'
        ]
    return options


def task_cfg_options(
    task: DemoTask,
    data_root: str,
    max_iters: Optional[int] = None,
    more_options: Sequence[str] = ()
) -> List[str]:
    """``--cfg-options`` that point ``task``'s config at the demo's data
    (``data_root`` holds ``coco/`` and ``ade/``), then train it for
    ``max_iters`` (:func:`schedule_options`), then ``more_options``."""
    root = osp.join(data_root, TASK_DIRS[task.name]) + '/'
    options = [
        f'{split}_dataloader.dataset.data_root={root}'
        for split in ('train', 'val', 'test')
    ]
    if task.library == 'mmdet':
        ann = root + 'annotations/instances_val2017.json'
        options += [
            f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}'
        ]
    if max_iters is not None:
        options += schedule_options(
            osp.join(PROJECT_ROOT, task.config), max_iters)
    return options + list(more_options)


def trained_checkpoint(train_dir: str) -> str:
    """The checkpoint training left in ``train_dir`` (mmengine's
    ``last_checkpoint`` file names it)."""
    marker = osp.join(train_dir, 'last_checkpoint')
    if not osp.isfile(marker):
        raise FileNotFoundError(f'training left no {marker}')
    with open(marker, encoding='utf-8') as f:
        path = f.read().strip()
    if not osp.isfile(path):
        raise FileNotFoundError(f'{marker} names {path}, which is missing')
    return path


class TaskPlan:
    """The phases of one task, in their order.

    Args:
        task (DemoTask): The model.
        data_root (str): The demo's data (``coco/`` and ``ade/`` in it).
        work_dir (str): The demo's work directory; the task's is
            ``<work_dir>/<task>``.
        max_iters (int, optional): Training iterations in place of the
            config's. Defaults to None.
        cfg_options (Sequence[str]): More ``--cfg-options`` for every
            command. Defaults to ().
        num_train (int, optional): Training images to generate. Defaults
            to None (:data:`demo.data.DEFAULTS`).
        num_val (int, optional): Validation images to generate. Defaults
            to None (:data:`demo.data.DEFAULTS`).
    """

    def __init__(self,
                 task: DemoTask,
                 data_root: str,
                 work_dir: str,
                 max_iters: Optional[int] = None,
                 cfg_options: Sequence[str] = (),
                 num_train: Optional[int] = None,
                 num_val: Optional[int] = None):
        self.task = task
        self.config = osp.join(PROJECT_ROOT, task.config)
        self.data_root = data_root
        self.root = osp.join(work_dir, task.name)
        self.num_train = num_train
        self.num_val = num_val
        self.options = ['--cfg-options'] + task_cfg_options(
            task, data_root, max_iters, cfg_options)

    def _log(self, name: str) -> str:
        return osp.join(self.root, f'{name}.log')

    @property
    def dataset_dir(self) -> str:
        """The task's dataset: ``<data_root>/coco`` or ``<data_root>/ade``."""
        return osp.join(self.data_root, TASK_DIRS[self.task.name])

    def generate(self) -> Phase:
        """``tools/dataset_converters/make_demo_data.py`` for the task (a
        dataset already there with the same parameters is kept)."""
        command = python_command(MAKE_DATA_TOOL, '--out', self.data_root,
                                 '--tasks', self.task.name)
        for flag, value in (('--num-train', self.num_train), ('--num-val',
                                                              self.num_val)):
            if value is not None:
                command += [flag, str(value)]
        return Phase(self.task.name, 'generate', [command],
                     self._log('generate'))

    def dataset_size(self) -> Dict[str, int]:
        """``{'train': images, 'val': images}`` of the generated dataset
        (from its marker)."""
        with open(
                osp.join(self.dataset_dir, MARKER_NAME),
                encoding='utf-8') as f:
            params = json.load(f)['params']
        return dict(train=params['num_train'], val=params['num_val'])

    def _test_command(self, name: str, checkpoint: str, *flags:
                      str) -> Tuple[List[str], Dict[str, str]]:
        """``tools/test.py`` of ``checkpoint`` into ``<task>/<name>``, with
        its predictions (``--out``); the command and where it writes."""
        work_dir = osp.join(self.root, name)
        predictions = osp.join(
            work_dir, 'predictions.pkl'
            if self.task.library == 'mmdet' else 'predictions')
        command = python_command(TEST_TOOL, self.config, checkpoint,
                                 '--work-dir', work_dir, *flags, '--out',
                                 predictions, *self.options)
        return command, dict(work_dir=work_dir, predictions=predictions)

    def untrained(self) -> Phase:
        """Save the initialised model, then test it."""
        initial = osp.join(self.root, 'untrained', 'initial_weights.pth')
        test, outputs = self._test_command('untrained', initial)
        return Phase(
            self.task.name,
            'untrained', [
                python_command('-m', 'demo.initial_weights', self.config,
                               initial, *self.options), test
            ],
            self._log('untrained'),
            library=self.task.library,
            outputs=outputs)

    def train(self) -> Phase:
        """Train from scratch (the tests evaluate; no validation)."""
        train_dir = osp.join(self.root, 'train')
        return Phase(
            self.task.name,
            'train', [
                python_command(TRAIN_TOOL, self.config, '--work-dir',
                               train_dir, '--no-validate', *self.options)
            ],
            self._log('train'),
            outputs=dict(train_dir=train_dir))

    def test(self, checkpoint: str, tta: bool = False) -> Phase:
        """Test ``checkpoint``, with ``--tta`` or without (the summary
        picture draws the predictions of the test without)."""
        name = 'test_tta' if tta else 'test'
        test, outputs = self._test_command(name, checkpoint,
                                           *(['--tta'] if tta else []))
        return Phase(
            self.task.name,
            name, [test],
            self._log(name),
            library=self.task.library,
            outputs=outputs)


#: The runs of a task's table, and the phases that give them.
RUN_PHASES = OrderedDict([('untrained', 'untrained'), ('trained', 'test'),
                          ('trained + TTA', 'test_tta')])

#: The phases of a task, in the order a lane takes them, each with the
#: phases of the same task it needs done first (the data; the trained
#: checkpoint). Training, the longest, comes before the untrained
#: evaluation, and the test with ``--tta`` before the plain one.
PHASE_NEEDS = OrderedDict([
    ('generate', ()),
    ('train', ('generate', )),
    ('untrained', ('generate', )),
    ('test_tta', ('train', )),
    ('test', ('train', )),
])


def plan_phase(plan: TaskPlan, name: str, done: Dict[str, Phase]) -> Phase:
    """The phase ``name`` of ``plan``; ``done`` holds the task's finished
    phases, the ones it needs (:data:`PHASE_NEEDS`) among them."""
    if name == 'generate':
        return plan.generate()
    if name == 'untrained':
        return plan.untrained()
    if name == 'train':
        return plan.train()
    if name in ('test', 'test_tta'):
        return plan.test(
            done['train'].outputs['checkpoint'], tta=name == 'test_tta')
    raise ValueError(f'no demo phase {name!r}')


def run_phase(plan: TaskPlan,
              phase: Phase,
              env: Optional[dict] = None,
              on_progress: Optional[Callable[[IterProgress], None]] = None,
              on_process: Optional[Callable] = None) -> float:
    """Run ``phase``'s commands, then read back what the next steps need:
    a test phase's metrics (``phase.results``), the dataset's size, the
    trained checkpoint (``phase.outputs``).

    Args:
        plan (TaskPlan): The phase's task.
        phase (Phase): The phase.
        env (dict, optional): The commands' environment. Defaults to None.
        on_progress (Callable, optional): Called with each progress line.
            Defaults to None.
        on_process (Callable, optional): See
            :func:`demo.phases.run_logged`. Defaults to None.

    Returns:
        float: The seconds the commands took.

    Raises:
        PhaseError: A command failed.
        ValueError, FileNotFoundError: The phase's output lacks what the
            next step needs (the metrics, the checkpoint); the exception's
            ``phase`` attribute is the phase.
    """
    seconds = run_logged(
        phase.commands,
        phase.log_path,
        on_progress=on_progress,
        env=env,
        on_process=on_process)
    try:
        if phase.library is not None:
            phase.results = read_test_results(phase.library, plan.dataset_dir,
                                              phase.outputs['work_dir'],
                                              phase.outputs['predictions'])
        if phase.name == 'generate':
            phase.outputs['dataset_size'] = plan.dataset_size()
        if phase.name == 'train':
            phase.outputs['checkpoint'] = trained_checkpoint(
                phase.outputs['train_dir'])
    except (ValueError, OSError) as exc:
        exc.phase = phase
        raise
    return seconds


class PhaseQueue:
    """The phases of the demo's tasks, handed to lanes that each run one
    phase at a time.

    A lane asking for work gets the first phase whose needs are done,
    looking through the tasks in their order and each task's phases in
    theirs (:data:`PHASE_NEEDS`). So the first task (the demo's longest,
    Mask R-CNN) starts each phase as soon as it can, and a lane it cannot
    use yet, or no longer, runs the next task's phases: with two lanes, one
    trains Mask R-CNN from the start while the other evaluates it untrained
    and does all of UperNet, and Mask R-CNN's two tests run side by side
    after its training.

    Args:
        plans (Sequence[TaskPlan]): The tasks, in order.
    """

    def __init__(self, plans: Sequence[TaskPlan]):
        self.plans = OrderedDict((plan.task.name, plan) for plan in plans)
        #: task -> {phase name: finished Phase}, in the order they finished.
        self.done: Dict[str, Dict[str, Phase]] = {
            name: OrderedDict()
            for name in self.plans
        }
        self._taken = set()
        self._closed = False
        self._changed = threading.Condition()

    def _ready(self) -> Tuple[bool, Optional[Tuple[str, str]]]:
        """Whether any phase is left, and the first that can start now."""
        left = False
        for task in self.plans:
            for name, needs in PHASE_NEEDS.items():
                if (task, name) in self._taken:
                    continue
                left = True
                if all(need in self.done[task] for need in needs):
                    return left, (task, name)
        return left, None

    def take(self) -> Optional[Phase]:
        """The next phase to run, once one can start; None when every
        phase has been taken or the queue is closed."""
        with self._changed:
            while not self._closed:
                left, ready = self._ready()
                if not left:
                    return None
                if ready is not None:
                    self._taken.add(ready)
                    task, name = ready
                    return plan_phase(self.plans[task], name, self.done[task])
                self._changed.wait()
            return None

    def finish(self, phase: Phase) -> None:
        """Record ``phase`` as done: the phases that need it can start."""
        with self._changed:
            self.done[phase.task][phase.name] = phase
            self._changed.notify_all()

    def close(self) -> None:
        """Hand out nothing more (a phase failed, or the demo stops)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
