from mi_course.cli import main

raise SystemExit(main())
