"""The tabs grouped into a path (ui/__init__.py's TAB_GROUPS, named in ui/intro.md): every tab in exactly one group,
in the built app too, and no group name that a search for a tab title would also find."""
from __future__ import annotations

import gradio as gr

import ui


def test_every_tab_is_in_exactly_one_group():
    grouped = [cls for _, members in ui.TAB_GROUPS for cls in members]
    assert sorted(c.__name__ for c in grouped) == sorted(c.__name__ for c in ui.TABS)
    assert len(grouped) == len(set(grouped))
    titles = [cls.title.lower() for cls in ui.TABS]
    for group, _ in ui.TAB_GROUPS:
        assert not any(t in group.lower() for t in titles), group       # a tab's title never matches its group


def test_the_intro_names_the_path_in_order():
    intro = ui.INTRO
    positions = [intro.find(group.split(" · ", 1)[1]) for group, _ in ui.TAB_GROUPS]
    assert -1 not in positions and positions == sorted(positions), positions


def test_the_built_app_nests_each_tab_in_its_group(app_demo):
    def tab_children(block):
        return [c for c in getattr(block, "children", []) if isinstance(c, gr.Tab)]

    outer = next(b for b in app_demo.blocks.values() if isinstance(b, gr.Tabs) and b.elem_id == "tab-groups")
    layout = {}
    for group in tab_children(outer):
        inner = next(c for c in group.children if isinstance(c, gr.Tabs))
        layout[group.label] = [t.label for t in tab_children(inner)]
    assert layout == {g: [c.title for c in members] for g, members in ui.TAB_GROUPS}
