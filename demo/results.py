# Copyright (c) mmvheat contributors. All rights reserved.
"""The demo's metrics, read from the logs of ``tools/test.py``.

mmengine's ``LoggerHook`` ends a test with one line of metrics
(``Iter(test) [50/50]  aAcc: 95.1  mIoU: 80.2 ...``); the per-class numbers
are only in the tables the evaluators print before it: mmseg's
``IoUMetric`` (``per class results:``, columns ``Class | IoU | Acc``) and
mmdet's ``CocoMetric`` with ``classwise=True`` (one table per ``Evaluating
bbox...`` / ``Evaluating segm...``, columns ``category | mAP | ...``; the
metrics it returns keep only the last table's per-class AP). This module
reads both back from the log, in percent, and lays the runs out side by
side.
"""
import math
import re
from collections import OrderedDict
from typing import List, Mapping, Optional, Sequence, Tuple

__all__ = [
    'LogTable', 'read_tables', 'read_final_metrics', 'read_test_log',
    'format_table', 'format_markdown_table', 'classes_at_zero'
]

_FINAL = re.compile(r'Iter\(test\)\s*\[\s*(\d+)/(\1)\]')
_PAIR = re.compile(r'(?P<key>[\w/.]+): (?P<value>-?(?:\d+\.?\d*|nan|inf))')
_EVALUATING = re.compile(r'Evaluating (?P<metric>bbox|segm|proposal)\.\.\.')


class LogTable:
    """A table printed in a log (PrettyTable or terminaltables style).

    Args:
        context (str): The last evaluator message before the table
            (``'per class results'``, ``'bbox'`` or ``'segm'``), or ``''``.
        header (list[str]): The column names.
        rows (list[list[str]]): The cells, as printed.
    """

    def __init__(self, context: str, header: List[str], rows: List[List[str]]):
        self.context = context
        self.header = header
        self.rows = rows

    def column(self, name: str) -> 'OrderedDict[str, float]':
        """``{first cell: float(cell of column name)}`` for each row."""
        index = self.header.index(name)
        return OrderedDict((row[0], float(row[index])) for row in self.rows)

    def __repr__(self) -> str:
        return (f'LogTable(context={self.context!r}, header={self.header}, '
                f'{len(self.rows)} rows)')


def _cells(line: str) -> List[str]:
    return [cell.strip() for cell in line.strip().strip('|').split('|')]


def read_tables(text: str) -> List[LogTable]:
    """Every ``+---+`` / ``| a | b |`` table in ``text``, in order."""
    tables, context = [], ''
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        evaluating = _EVALUATING.search(line)
        if evaluating:
            context = evaluating['metric']
        elif 'per class results' in line:
            context = 'per class results'
        if not (line.startswith('+') and line.endswith('+')):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].strip()[:1] in ('+', '|'):
            if lines[i].strip().startswith('|'):
                block.append(_cells(lines[i]))
            i += 1
        if len(block) >= 2:
            tables.append(LogTable(context, block[0], block[1:]))
    return tables


def read_final_metrics(text: str) -> 'OrderedDict[str, float]':
    """The metrics of the last ``Iter(test) [N/N]`` line of a log."""
    found = None
    for line in text.splitlines():
        match = _FINAL.search(line)
        if match:
            found = line[match.end():]
    if found is None:
        raise ValueError('the log holds no final "Iter(test) [N/N]" line '
                         '(did the test finish?)')
    return OrderedDict((m['key'], float(m['value']))
                       for m in _PAIR.finditer(found)
                       if m['key'] not in ('time', 'data_time'))


def _table_for(tables: Sequence[LogTable], context: str, column: str,
               log_name: str) -> LogTable:
    for table in reversed(tables):
        if table.context == context and column in table.header:
            return table
    raise ValueError(f'{log_name} holds no per-class table with a {column!r} '
                     f'column after "{context}" (mmseg IoUMetric, or mmdet '
                     'CocoMetric with classwise=True)')


def read_test_log(text: str,
                  library: str,
                  log_name: str = 'the log') -> 'OrderedDict[str, float]':
    """The rows of the demo's table from a ``tools/test.py`` log.

    Args:
        text (str): The log.
        library (str): ``'mmdet'`` (Mask R-CNN: bbox and segm AP, overall
            and per class) or ``'mmseg'`` (mIoU and per-class IoU, aAcc).
        log_name (str): How errors name the log. Defaults to ``'the log'``.

    Returns:
        OrderedDict: ``{row: value in percent}``; a class row is
        ``'<metric> | <class>'`` after its metric's row (``'bbox AP'``,
        ``'bbox AP | circle'``, ...). ``nan`` where the evaluator had none
        (a class without ground truth).

    Raises:
        ValueError: The log lacks the final metrics or a per-class table.
    """
    final = read_final_metrics(text)
    tables = read_tables(text)
    rows = OrderedDict()
    if library == 'mmdet':
        for kind in ('bbox', 'segm'):
            key = f'coco/{kind}_mAP'
            if key not in final:
                raise ValueError(f'{log_name}: no {key} in the final metrics')
            rows[f'{kind} AP'] = 100 * final[key]
            per_class = _table_for(tables, kind, 'mAP', log_name)
            for name, value in per_class.column('mAP').items():
                rows[f'{kind} AP | {name}'] = 100 * value
    elif library == 'mmseg':
        for key in ('mIoU', 'aAcc'):
            if key not in final:
                raise ValueError(f'{log_name}: no {key} in the final metrics')
        rows['mIoU'] = final['mIoU']
        per_class = _table_for(tables, 'per class results', 'IoU', log_name)
        for name, value in per_class.column('IoU').items():
            rows[f'mIoU | {name}'] = value
        rows['aAcc'] = final['aAcc']
    else:
        raise ValueError(f'library must be mmdet or mmseg, got {library!r}')
    return rows


def classes_at_zero(rows: Mapping[str, float]) -> List[str]:
    """The class rows whose value rounds to 0.0 (a class without ground
    truth, nan, is not among them)."""
    return [
        row for row, value in rows.items()
        if ' | ' in row and value is not None and round(value, 1) == 0
    ]


def _value(value: Optional[float]) -> str:
    """One decimal; ``-`` where there is no value (no run, or a class
    without ground truth)."""
    if value is None or math.isnan(value):
        return '-'
    return f'{value:.1f}'


def _grid(
    results: Mapping[str, Mapping[str, Mapping[str,
                                               float]]], titles: Mapping[str,
                                                                         str]
) -> Tuple[List[str], List[Tuple[str, bool, List[str]]]]:
    """Column names, and rows ``(label, is_title, cells)``."""
    runs = []
    for by_run in results.values():
        runs += [run for run in by_run if run not in runs]
    rows = []
    for task, by_run in results.items():
        rows.append((titles.get(task, task), True, [''] * len(runs)))
        labels = []
        for values in by_run.values():
            labels += [label for label in values if label not in labels]
        for label in labels:
            name = label.split(' | ')[-1]
            indent = '    ' if ' | ' in label else '  '
            rows.append(
                (indent + name, False,
                 [_value(by_run.get(run, {}).get(label)) for run in runs]))
    return runs, rows


def format_table(results: Mapping[str, Mapping[str, Mapping[str, float]]],
                 titles: Optional[Mapping[str, str]] = None) -> str:
    """The runs side by side as plain text.

    Args:
        results (Mapping): ``{task: {run: rows}}``, rows as from
            :func:`read_test_log`.
        titles (Mapping, optional): A title per task (the model, say).
            Defaults to None (the task's name).

    Returns:
        str: One line per metric and class, one column per run.
    """
    runs, rows = _grid(results, titles or {})
    width = max([len(label) for label, _, _ in rows] + [10]) + 2
    cell = max([len(run) for run in runs] + [7]) + 2
    lines = [' ' * width + ''.join(f'{run:>{cell}}' for run in runs)]
    for label, is_title, cells in rows:
        if is_title:
            lines.append(label)
        else:
            lines.append(f'{label:<{width}}' + ''.join(f'{c:>{cell}}'
                                                       for c in cells))
    return '\n'.join(lines)


def format_markdown_table(results: Mapping[str, Mapping[str, Mapping[str,
                                                                     float]]],
                          titles: Optional[Mapping[str, str]] = None) -> str:
    """:func:`format_table` as a Markdown table (classes in italics)."""
    runs, rows = _grid(results, titles or {})
    lines = [
        '| | ' + ' | '.join(runs) + ' |', '| --- |' + ' ---: |' * len(runs)
    ]
    for label, is_title, cells in rows:
        if is_title:
            lines.append(f'| **{label}** |' + ' |' * len(runs))
        elif label.startswith('    '):
            lines.append(f'| &nbsp;&nbsp;*{label.strip()}* | ' +
                         ' | '.join(cells) + ' |')
        else:
            lines.append(f'| {label.strip()} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
