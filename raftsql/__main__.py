from raftsql.cli import main

raise SystemExit(main())
