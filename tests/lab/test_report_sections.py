"""The report's optional sections: every builder's section in order, none for a builder with nothing to show."""

from __future__ import annotations

from pathlib import Path

from dinolite.lab.report_sections import ReportSection, build_sections


def test_sections_keep_the_builders_order_and_drop_those_with_nothing_to_show(tmp_path):
    seen: list[tuple[object, object, Path]] = []

    def asked(plan, reports, out_dir):
        seen.append((plan, reports, out_dir))
        return ReportSection("## Asked", (("asked.png", "Asked"),))

    def not_asked(plan, reports, out_dir):
        return None

    def text_only(plan, reports, out_dir):
        return ReportSection("A paragraph.")

    plan, reports = object(), []
    sections = build_sections((text_only, not_asked, asked), plan, reports, tmp_path)
    assert [s.text for s in sections] == ["A paragraph.", "## Asked"]
    assert sections[0].figures == () and sections[1].figures == (("asked.png", "Asked"),)
    assert seen == [(plan, reports, tmp_path)]  # each builder is given the plan, the runs and the folder
