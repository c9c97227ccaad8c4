from cefmp4.cli.main import entry

entry()
