"""simulate_warmup: run a scenario through the real engine on a throwaway database and a simulated clock."""

import json

from django.core.management.base import BaseCommand, CommandError

from warmup.simulation import ScenarioError, draw_chart, load_scenario, simulate


class Command(BaseCommand):
    help = (
        "Simulate warmups: the real engine, counter store and consolidation on a throwaway database with a "
        "simulated clock. Nothing persists and no alert leaves. See warmup/scenarios/ for examples."
    )

    def add_arguments(self, parser):
        parser.add_argument("--scenario", required=True, metavar="FILE", help="Scenario JSON file.")
        parser.add_argument("--json", action="store_true", help="Print the day-by-day result as JSON.")
        parser.add_argument("--chart", metavar="FILE.png", help="Draw quota and sent per IP, with pauses, to a PNG.")

    def handle(self, *args, **options):
        scenario = self.read_scenario(options["scenario"])
        try:
            result = simulate(scenario)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        if options["chart"]:
            draw_chart(result, options["chart"])
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=1))
        else:
            self.print_summary(result)
        if options["chart"] and options["verbosity"] > 0 and not options["json"]:
            self.stdout.write(self.style.SUCCESS(f"Chart written to {options['chart']}"))

    def read_scenario(self, path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as exc:
            raise CommandError(f"Cannot read the scenario {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise CommandError(f"The scenario {path} is not valid JSON: {exc}") from exc
        try:
            return load_scenario(data)
        except ScenarioError as exc:
            raise CommandError(f"Invalid scenario {path}: {exc}") from exc

    def print_summary(self, result: dict) -> None:
        last = result["days"][-1]
        self.stdout.write(f"{len(result['days'])} days simulated; last day {last['date']}:")
        for entry in last["ips"]:
            self.stdout.write(
                f"  {entry['ip']:<16} {entry['status']:<8} {entry['phase']:<10} quota {entry['daily_quota']}"
            )
        self.stdout.write(f"Total daily capacity: {last['total_daily_capacity']}")
        for event in result["events"]:
            self.stdout.write(
                f"  day {event['day']:>3} {event['ip']:<16} {event['kind']:<16} "
                f"{event['from_phase']}->{event['to_phase']} {event['reason']}"
            )
