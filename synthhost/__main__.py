from synthhost.cli import cli

cli(prog_name="synthhost")
