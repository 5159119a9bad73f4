from raftsql.cli.main import main

raise SystemExit(main())
