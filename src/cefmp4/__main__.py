from cefmp4.cli import main

raise SystemExit(main())
