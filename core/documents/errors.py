"""The one error type ingestion raises for bad input: it names the file and what to do."""

from core.errors import UserError


class IngestError(UserError):
    def __init__(self, filename: str, problem: str, advice: str = ""):
        self.filename = filename
        self.problem = problem
        self.advice = advice
        super().__init__(f"{filename}: {problem}" + (f" {advice}" if advice else ""))
