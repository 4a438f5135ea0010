from codelora.cli import main

raise SystemExit(main())
