"""(placeholder: the proxy CLI, issue 4)"""


async def main(args) -> int:
    raise SystemExit("python -m tether proxy is not implemented yet")
